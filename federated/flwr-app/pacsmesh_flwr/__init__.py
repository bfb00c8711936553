"""Entry points that Flower's SuperLink and SuperNodes load from the pacsmesh FAB."""
