from loopline_retrainer.main import run

run()
