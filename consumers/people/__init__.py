"""Faces grouped into persons (Immich's "people"), per tenant.

- ``registry``: what users decided (names, merges, faces taken out), one row per person
  in the ``people`` collection; assignment only ever reads it, so no assignment can
  overwrite a user's decision.
- ``assign``: the face task's incremental assignment from the neighbours its search
  already found, and the ``people.v1`` events it leaves for the publisher.
- ``recluster``: DBSCAN over a tenant's stored face vectors, keeping person ids (and
  with them names) where a cluster keeps most of a person's faces.
- ``book``: the gateway's and the CLI's view (list, one person, rename, merge, remove).
"""
