"""Route modules of the console; each defines `router` and the app includes them all."""
