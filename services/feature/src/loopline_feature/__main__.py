from loopline_feature.main import run

run()
