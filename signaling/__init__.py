"""The live service's signaling side: the WebSocket protocol, one WebRTC peer per client, the server.

`signaling.server.run_server(config)` is what `avatar serve` runs. Dependencies point one way:
signaling uses the avatar library; the library never imports signaling.
"""
