"""Training plug-ins: additions to the single-stage training, each switched on by one key.

``plugins.<name>.enabled: true`` in params.yaml (or ``-S plugins.<name>.enabled=true``) trains
with the plug-in ``<name>``. The registry below maps names to classes; a new plug-in is one module
(copy ``rtc.py`` or ``fbr.py``), its section in params.yaml and the schema, and one line here.
See docs/plugins.md.
"""

from __future__ import annotations

from wsss.errors import WsssError
from wsss.plugins.acr import ACR
from wsss.plugins.base import PluginSet, Step, TrainingPlugin
from wsss.plugins.fbr import FBR
from wsss.plugins.flip_affinity import FlipAffinity
from wsss.plugins.rtc import RTC
from wsss.plugins.supportnet import SupportNet

PLUGINS: dict[str, type[TrainingPlugin]] = {cls.name: cls for cls in (RTC, FBR, SupportNet, ACR, FlipAffinity)}

__all__ = ["PLUGINS", "PluginSet", "Step", "TrainingPlugin", "build_plugins", "check_plugins", "enabled_plugins"]


def enabled_plugins(cfg: dict) -> list[str]:
    """The names of the plug-ins ``cfg`` switches on, in params order."""
    return [name for name, section in cfg["plugins"].items() if section["enabled"]]


def check_plugins(cfg: dict) -> list[type[TrainingPlugin]]:
    """The classes of the plug-ins ``cfg`` switches on, after checking that each can serve it.

    Raises WsssError naming the key for a name without a registered plug-in, a plug-in on a
    ``model.method`` it cannot serve, or a setting its ``check`` refuses. Makes no module.
    """
    classes = []
    for name in enabled_plugins(cfg):
        if name not in PLUGINS:
            raise WsssError(f"key 'plugins.{name}': no such plug-in (known: {', '.join(sorted(PLUGINS))})")
        cls = PLUGINS[name]
        method = cfg["model"]["method"]
        if method not in cls.methods:
            raise WsssError(f"key 'plugins.{name}.enabled': plug-in '{name}' needs model.method in "
                            f"{list(cls.methods)}, not {method!r}")
        cls.check(cfg)
        classes.append(cls)
    return classes


def build_plugins(cfg: dict, network) -> PluginSet:
    """The plug-ins ``cfg`` switches on for ``network`` (``check_plugins`` first), their heads freshly
    initialised from torch's global generator in params order; an empty set when none is on."""
    return PluginSet([cls(cfg, network) for cls in check_plugins(cfg)])
