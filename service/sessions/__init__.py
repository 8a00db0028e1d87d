"""Live sessions in the service: an acquisition process and a worker process each,
joined to the WebSocket hub by :class:`~.session.LiveSession`; :class:`~.manager.SessionManager`
creates, finds and stops them. Nothing is imported here, so the acquisition process
(:mod:`.acquirer`) starts without torch."""
