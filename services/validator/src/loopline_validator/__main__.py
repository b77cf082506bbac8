from loopline_validator.main import run

run()
