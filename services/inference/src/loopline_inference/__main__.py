from loopline_inference.main import run

run()
