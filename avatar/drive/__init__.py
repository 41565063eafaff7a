"""What moves the face: phonemes and visemes from speech, and the data to learn them from audio."""
