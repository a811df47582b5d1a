"""The faust side of the processor: the only modules that import faust."""
