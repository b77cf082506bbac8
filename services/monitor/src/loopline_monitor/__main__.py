from loopline_monitor.main import run

run()
