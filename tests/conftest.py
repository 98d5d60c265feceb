import os
import sys
from pathlib import Path

# One intra-op thread: the models in these tests are tiny, and on a shared 2-core
# machine OpenMP threads spin-waiting on each other cost far more than they gain.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
