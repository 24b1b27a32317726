"""Repository-wide pytest set-up: the chapter notebooks run in the course's fast mode on the CPU.

The kernels that nbval starts inherit this process's environment.
"""

import os

os.environ["DIFFUSION_COURSE_FAST"] = "1"
os.environ.setdefault("DIFFUSION_COURSE_DEVICE", "cpu")
