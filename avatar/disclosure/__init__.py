"""Disclosure: every output of the service says it is synthetic.

- mark.py: the visible label drawn into every frame, on the generator's device.
- watermark.py: the invisible watermark embedded into every frame, batched on the device; detect.py
  finds it again in frames that went through encoders, scaling and colour changes.
- payload.py: what the watermark carries (service id, session number, a CRC).
- stage.py: both, as the last stage of every generator step.
- credentials.py: C2PA content credentials of rendered files; verify.py: `avatar verify`.
"""
