"""The top of the house: the `bus` command's wiring (:mod:`idlecloud.cli`) and the tooling
that brings up a development machine's services (:mod:`idlecloud.dev`).

Nothing below imports it: the library (:mod:`schemas`, :mod:`bus`), the node agent
(:mod:`nodeagent`) and the control-plane services (:mod:`services`) are wired together
here and only here (``docs/architecture.md``, "Layers").
"""
