"""``python -m trainers.pretrain ARGV`` fetching each training batch slowly, for a test to signal it mid-run.

    python tests/workers/slow_trainer.py SECONDS PID_FOLDER ARGV...

Every process writes its pid to ``PID_FOLDER/rank_<RANK>`` first; the delay changes no number of the run.
With ``SLOW_SAVE=S`` in the environment, a sharded save waits S seconds after writing its shards, before
its manifest: a window in which a test can kill the run mid-save.
"""

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    delay, pid_folder, argv = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    pid_folder.mkdir(parents=True, exist_ok=True)
    (pid_folder / f"rank_{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    from trainers import data
    from trainers.pretrain import USER_ERRORS, main

    original = data.BlockBatches.__getitem__

    def slow(self, index):
        if self.shuffle:
            time.sleep(delay)
        return original(self, index)

    data.BlockBatches.__getitem__ = slow
    if os.environ.get("SLOW_SAVE"):
        from trainers.sharded_checkpoint import ShardedState

        save = ShardedState.save

        def slow_save(self, folder):
            save(self, folder)
            time.sleep(float(os.environ["SLOW_SAVE"]))

        ShardedState.save = slow_save
    try:
        main(argv)
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
