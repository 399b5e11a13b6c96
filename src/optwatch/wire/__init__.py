"""Sockets between a job and its viewers, discovery of running jobs, access tokens."""
