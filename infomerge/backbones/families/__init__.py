"""One module per backbone family (see :mod:`infomerge.backbones.family`)."""
