"""infomerge: training-free visual-token compression (InfoMerge, FastVID) for video LLMs.

Packages, one concept each:
- :mod:`infomerge.video`       decode a video and preprocess frames for SigLIP
- :mod:`infomerge.compress`    the compressors: paper-exact reference and the shape-static export variant
- :mod:`infomerge.backbones`   backbone registry, checkpoint loading, the vision encoder graph
- :mod:`infomerge.export`      ONNX export specs, validation and the ``infomerge-export`` command
- :mod:`infomerge.engines`     TensorRT / TensorRT-RTX engine building, metadata, the merge plugin
- :mod:`infomerge.runtime`     the video-QA pipeline and the ``infomerge-run`` command
- :mod:`infomerge.bench`       stage-by-stage benchmarks and prefill FLOPs
- :mod:`infomerge.jetson`      Jetson telemetry (tegrastats) and the memory planner
"""

import os as _os

# OpenMP threads sleep between parallel regions instead of spinning on cores other processes need
# (docs/runtime.md, "Threads": 2 threads on 2 busy cores took 6.5 s for a 0.4 s compression
# spinning, 0.44 s sleeping). OpenMP reads this once, when torch loads it: it is set here, before
# any infomerge module imports torch; a value already in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
