from vitprobe.cli import run

run()
