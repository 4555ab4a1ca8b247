"""The on-disk contract of an artifact directory: file names (:mod:`.layout`), the manifest with
every file's sha256 (:mod:`.manifest`), one ONNX inspector (:mod:`.onnx_graph`) and atomic writes
(:mod:`.atomic`). Export writes artifacts only through these modules; runtime, engines and bench
read them only through them."""
