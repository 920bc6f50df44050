"""Node fault injection that can never leave a fault behind (see engine.py for the guarantees)."""
