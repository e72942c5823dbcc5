"""The API's routers: admin, participant, audit and operations."""
