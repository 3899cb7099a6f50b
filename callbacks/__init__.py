"""Lightning callbacks for continual learning with atom banks (installed as ``moram.callbacks``)."""
