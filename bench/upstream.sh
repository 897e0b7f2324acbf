# shellcheck shell=bash
# bench/upstream.sh -- sourced by the bench scripts: the upstream every benchmark proxies to.
# nginx, 1 worker, answering every request with one fixed JSON body and never closing a
# keep-alive connection (the method of ../shared/bench/peers.sh), on 127.0.0.1 only.
#
# upstream_conf RUNDIR ERRLOG PORT BODY: that nginx.conf on stdout (pid and temp files in RUNDIR).
# proxy_conf RUNDIR ERRLOG PORT UPSTREAM_PORT LOCATION: the reference apigate is measured against,
# nginx as a plain reverse proxy (1 worker, upstream keepalive), on stdout.
upstream_conf() {
  cat <<EOF
# upstream: fixed JSON body, keep-alive for the whole run
worker_processes 1;
pid $1/nginx-upstream.pid;
error_log $2 warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/up_body; proxy_temp_path $1/up_proxy; fastcgi_temp_path $1/up_fcgi;
  uwsgi_temp_path $1/up_uwsgi; scgi_temp_path $1/up_scgi;
  keepalive_requests 10000000; keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$3 backlog=4096;
    location / { default_type application/json; return 200 '$4'; }
  }
}
EOF
}

proxy_conf() {
  cat <<EOF
# nginx as a plain reverse proxy: 1 worker, upstream keepalive
worker_processes 1;
pid $1/nginx-proxy.pid;
error_log $2 warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/p_body; proxy_temp_path $1/p_proxy; fastcgi_temp_path $1/p_fcgi;
  uwsgi_temp_path $1/p_uwsgi; scgi_temp_path $1/p_scgi;
  keepalive_requests 10000000; keepalive_timeout 75s;
  upstream up { server 127.0.0.1:$4; keepalive 128; keepalive_requests 10000000; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {
    listen 127.0.0.1:$3 backlog=4096;
    location $5 { proxy_pass http://up; }
  }
}
EOF
}
