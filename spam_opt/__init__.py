"""spam-opt: SPAM and Stable-SPAM optimizers, a spike guard, and gradient-spike monitoring.

Example::

    from spam_opt import SPAM
    opt = SPAM(model.parameters(), lr=1e-3)
"""

from spam_opt.param_groups import param_groups
from spam_opt.spam import SPAM
from spam_opt.spike_guard import SpikeGuard
from spam_opt.stable_spam import StableSPAM
from spam_opt.stats import SpikeStats

__all__ = ["SPAM", "SpikeGuard", "SpikeStats", "StableSPAM", "param_groups"]
__version__ = "0.1.0"
