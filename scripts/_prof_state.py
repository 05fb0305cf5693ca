import sys, tempfile, time, uuid, cProfile, pstats
from pathlib import Path
import redis
import bench_stream
from bench_state_activity import _worker
from detector.model_registry import load_model
from detector.pipeline import default_detectors

def feed(worker, lines, bs):
    for start in range(0, len(lines), bs):
        entries = [(f"{start + o + 1}-0".encode(), {b"event": line}) for o, line in enumerate(lines[start:start+bs])]
        worker.process_entries(0, entries)
    from workers.checkpoint import dump_state; dump_state(worker.owned[0], worker.detectors, worker.plans)

client = redis.Redis()
det = default_detectors(load_model())
bs = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
with tempfile.TemporaryDirectory() as folder:
    history, lines = bench_stream.simulated_lines(Path(folder), 500, 200000, 7)
    w = _worker(client, Path(folder), det)
    feed(w, history, 50000)
    lines = lines * 1
    t = time.process_time(); t0=time.perf_counter()
    prof = cProfile.Profile(); prof.enable()
    feed(w, lines, bs)
    prof.disable()
    print(f"{len(lines)} events {time.process_time()-t:.2f} s CPU {time.perf_counter()-t0:.2f} s wall")
    prof.dump_stats('/tmp/state.prof')
    bench_stream.cleanup(client, w.settings.prefix)
