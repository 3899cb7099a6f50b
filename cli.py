"""Run moram from a checkout without installing the console script: ``python cli.py fit --config ...``."""

from moram.cli import entry

if __name__ == "__main__":
    entry()
