"""A generated dataset records the settings it was written with, so that a
generator run again with the same settings reuses it instead of rewriting."""
import json
import os.path as osp


def is_written_with(stamp, settings):
    """True when the stamp file ``stamp`` exists and holds ``settings``
    (the dataset next to it is complete and was made with them)."""
    if not osp.isfile(stamp):
        return False
    with open(stamp) as f:
        return json.load(f) == settings


def record_settings(stamp, settings):
    """Write the stamp once the dataset is complete."""
    with open(stamp, 'w') as f:
        json.dump(settings, f)
