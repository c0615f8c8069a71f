"""Voice on appliances: speech in (file, stdin, microphone, Wyoming), VAD on the device, transcription
wherever the plan and policy allow, then an action (chat, translate, Home Assistant)."""
