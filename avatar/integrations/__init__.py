"""The talking portrait inside other frameworks' pipelines.

`avatar.integrations.pipecat` holds a pipecat frame processor (it imports pipecat);
`avatar.integrations.timeline` is the framework-free part it is built on: queued voice in, one audio
window per video frame and the voice that goes out with each frame. Nothing here is imported by
the rest of `avatar`, so the service runs without any of these frameworks loaded.
"""
