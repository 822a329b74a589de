"""certframe.attacks: the attack suite (torchattacks-based, segmentation-aware)."""
