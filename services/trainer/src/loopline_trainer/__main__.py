from loopline_trainer.main import run

run()
