if ! run_doctor; then
    log "recurlm-doctor failed on this allocation (report above): not training"
    exit 3
fi
requeue_if_signalled  # a signal during the doctor: do not start training now
