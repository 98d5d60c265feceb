from synthforge.cli import run

run()
