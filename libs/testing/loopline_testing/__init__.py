"""Pytest plugin: the real local stack once per session, unique topic names per test, builders."""
