"""junodcs: the JUNO distributed computing system."""

__version__ = "0.1.0"
