"""Jetson Orin support.

- :mod:`infomerge.jetson.tegrastats`  parser of ``tegrastats`` lines and ``TegrastatsSampler``, a
  background sampler with averages and peaks of GPU load, RAM and power rails
- :mod:`infomerge.jetson.devices`     memory of the devices the planner knows (Jetson Orin, RTX, H100)
- :mod:`infomerge.jetson.planner`     ``infomerge-plan``: memory plan of a backbone on a device
- :mod:`infomerge.jetson.trtexec`     ``trtexec`` command lines equivalent to the engines we build
- :mod:`infomerge.jetson.install_check` the last step of ``jetson/setup.sh``: a kernel in torch and
  a graph in onnxruntime run on the GPU (a wheel built for another GPU imports and fails only there)

The shell side (setup, engine builds, containers) is in the repository's ``jetson/`` folder.
"""
