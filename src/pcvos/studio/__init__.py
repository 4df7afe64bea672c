"""pcvos studio: a local browser page to draw, propagate, correct and export masks.

:mod:`pcvos.studio.workspace` keeps a video's frames, masks and objects on disk;
:mod:`pcvos.studio.server` serves the page and its API (needs the ``studio`` extra: Starlette and
uvicorn); ``pcvos studio`` (:mod:`pcvos.studio.cli`) starts it. Importing this package imports
nothing heavy.
"""
