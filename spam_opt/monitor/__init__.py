"""Gradient-spike monitoring: ``GradientSpikeMonitor``, ``SpikeInjector`` and the Trainer callback.

The Hugging Face callback lives in ``spam_opt.monitor.hf_callback`` (it needs ``transformers``).
"""

from spam_opt.monitor.events import SpikeEvent
from spam_opt.monitor.gradient_monitor import GradientSpikeMonitor
from spam_opt.monitor.injector import SpikeInjector

__all__ = ["GradientSpikeMonitor", "SpikeEvent", "SpikeInjector"]
