"""The jobs service: durable jobs whose results outlive their submitter."""
