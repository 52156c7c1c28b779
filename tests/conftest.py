import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))

# One torch thread per test process, and in the processes the tests start (they inherit the
# variable), unless the caller chose a number. With more OpenMP threads than idle cores, every
# parallel region waits for threads the OS has not scheduled: on a 2-core machine shared with
# other work, gradgradcheck took 12.7 s with 2 threads against 2.7 s with one. No test depends on
# the number of threads; a run that wants more sets OMP_NUM_THREADS itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# torch's forward-mode AD loads its decompositions on first use, and that module scripts 18
# functions with torch.jit.script, which warns "`torch.jit.script` is deprecated" once per function
# (torch/_decomp/decompositions_for_jvp.py, torch's own code). Load it here with that warning
# silenced, so that a torch.jit.script call anywhere else still warns.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
    import torch._decomp.decompositions_for_jvp
