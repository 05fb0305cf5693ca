"""Start-up objects of a worker leave the garbage collector's scans."""

import gc

from workers.heap import freeze_startup_objects


def test_freeze_moves_live_objects_out_of_scans():
    kept = [[index] for index in range(1000)]
    try:
        frozen = freeze_startup_objects()

        assert frozen >= len(kept)
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_count()[0] < len(kept)
    finally:
        gc.unfreeze()
