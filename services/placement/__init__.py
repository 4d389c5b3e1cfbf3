"""The placement service: PC registry, scheduling core, reconciler, and their shell."""
