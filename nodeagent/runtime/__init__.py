"""Container runtimes behind one Protocol (:class:`bus.abc.Runtime`)."""
