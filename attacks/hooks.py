"""The attack suite's plugin hooks: the built-in attacks, registered like a third-party package's.

Declared under the ``certframe`` entry-point group as ``attacks``; the registry also
registers it directly (:data:`certframe.registry.BUILTINS`).
"""
from certframe.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from certframe.attacks import BUILTIN_ATTACKS

    for name, attack in BUILTIN_ATTACKS.items():
        register(name, attack)
