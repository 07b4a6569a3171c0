"""Uploaded files and job artifacts as stored objects, by concern: `storage` (the contract every backend
keeps, and the key layout), the backends `local` and `s3`, `backends` (which one the settings or a URL
name), `uploads` (a multipart body streamed to disk, counted, hashed and validated), `downloads` (ranged
and conditional answers, presigned redirects), `artifacts` (a job's outputs: listed, hashed, uploaded,
tarred) and `names` (the one rule of a safe artifact name).

Nothing is re-exported here: the client imports `names` without the storage backends (and boto3)."""
