"""``certframe study``: the paper's whole protocol on one data set, as stages that are reused, resumed or rerun.

=================  =====================================================================
module             what it owns
=================  =====================================================================
``spec``           the study file, parsed and validated (:class:`Study`, :class:`StudyError`)
``folder``         the study folder: ``study.json``, each stage's record, output digests
``plan``           stages, dependencies, keys, reuse / resume / rerun, the cost of each
``stages``         running one stage by calling the library function of its command
``run``            :func:`run_study`: check, plan, run, report
``bootstrap``      :func:`paired_bootstrap_ci` (images resampled, pairs kept together)
``report``         the study table, CIs, quality, cost, figure and HTML
``attack_report``  the report's attack pass: each attack run folder summarised per budget
=================  =====================================================================
See ``docs/study.md``.
"""
from certframe.study.bootstrap import paired_bootstrap_ci
from certframe.study.run import StudyResult, run_study
from certframe.study.spec import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "StudyResult", "load_study", "paired_bootstrap_ci", "run_study"]
