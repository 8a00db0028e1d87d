"""The browser viewer: static HTML, CSS and ES modules that glimpse.service serves at "/"."""
