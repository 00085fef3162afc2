"""Request management system (DIRAC's RMS): requests of ordered data operations, executed by agents."""
