from loopline_ingest.main import run

run()
