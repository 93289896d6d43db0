"""`crossmesh ui`: a local web page of the mesh (aiohttp server, plain ES modules in static/)."""
