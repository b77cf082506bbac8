from loopline_registry.main import run

run()
